"""What checking cached weights against their manifest costs on every load: sha256 throughput on this
machine, measured on a file of random bytes, and the time it gives for each released GPT-2's weights.

    python scripts/benchmark_verify_cache.py            # a 512 MiB file in the system's temp directory
"""

import argparse
import os
import tempfile
import time

from circuit_reuse.integrity import sha256

# model.safetensors of the released GPT-2 sizes on the Hub, in bytes (about: 4 bytes per parameter).
WEIGHT_BYTES = {"gpt2": 548e6, "gpt2-medium": 1.52e9, "gpt2-large": 3.25e9, "gpt2-xl": 6.43e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the file hashed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile() as f:
        for _ in range(args.mib):
            f.write(os.urandom(1 << 20))
        f.flush()
        sha256(f.name)  # once to bring the file into the page cache, as a just-loaded model's files are
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            sha256(f.name)
            times.append(time.perf_counter() - start)
    rate = args.mib * (1 << 20) / min(times)
    print(f"sha256: {rate / 1e6:.0f} MB/s (best of {args.repeats} over {args.mib} MiB)")
    for name, size in WEIGHT_BYTES.items():
        print(f"  {name:<12} {size / 1e9:5.2f} GB  {size / rate:5.1f} s per load")


if __name__ == "__main__":
    main()
