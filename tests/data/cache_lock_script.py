"""Ask for one split of the cache, with a slow, counted simulation (for the file-lock test).

Usage: python cache_lock_script.py CACHE_DIR MARKER_FILE GO_FILE
Appends a line to MARKER_FILE for every simulation, waits for GO_FILE, prints the data's checksum.
"""

import os
import sys
import time
from pathlib import Path

import set_lightning.data.cache as cache

if __name__ == "__main__":
    cache_dir, marker, go = sys.argv[1:4]
    real = cache.generate_trajectories

    def counted(spec, *args, **kwargs):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(2.0)  # a slow simulation: the other process asks for the split meanwhile
        return real(spec, *args, **kwargs)

    cache.generate_trajectories = counted
    Path(f"{go}.ready.{os.getpid()}").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    spec = cache.TrajectorySpec(split="train", count=4, n_particles=3, steps=300, sample_freq=100)
    data = cache.load_or_generate(spec, cache_dir)
    print(cache._checksum(data.tensors(), sorted(data.tensors())))
