#!/usr/bin/env python3
"""PyTorch's CPU matmul at the shapes of meshrt-bench-gemm, as a reference.

    /usr/bin/python3 bench/torch_gemm.py --sizes 512,1024,2048 --dtypes bf16,f16,f32

Prints the columns of meshrt-bench-gemm's meshrt side (m n k, type, ms per
matmul, GFLOP/s = 2mnk / time), timed the same way: each call alone, --warmup
untimed calls, then the mean of --iters timed ones. torch.set_num_threads is set
to --threads (default: the number of cores, as OpenBLAS and oneDNN use by
default in meshrt). A dtype torch has no CPU matmul for prints N/A and the reason.
Without torch (Debian: apt-get install python3-torch) it says so and exits 0.
"""
import argparse
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--sizes", default="512,1024,2048", help="square sizes m = n = k, comma-separated")
    parser.add_argument("-d", "--dtypes", default="bf16,f16,f32", help="comma-separated: bf16, f16, f32, f64")
    parser.add_argument("-i", "--iters", type=int, default=10, help="timed calls per shape")
    parser.add_argument("-w", "--warmup", type=int, default=2, help="untimed calls per shape")
    parser.add_argument("-t", "--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    args = parser.parse_args()
    try:
        import torch
    except ImportError as e:
        print(f"# torch_gemm.py: skipped, torch is not importable ({e}); Debian: apt-get install python3-torch")
        return 0
    dtypes = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, "f64": torch.float64}
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"# torch_gemm.py: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warmup + {args.iters} timed iterations per shape")
    print(f"# torch.backends.mkldnn available: {torch.backends.mkldnn.is_available()}")
    print("#%7s %7s %7s %5s %10s %10s" % ("m", "n", "k", "type", "torch ms", "GFLOP/s"))
    for name in args.dtypes.split(","):
        if name not in dtypes:
            print(f"# unknown dtype {name}", file=sys.stderr)
            return 2
        for n in sizes:
            gen = torch.Generator().manual_seed(1)
            a = (torch.rand(n, n, generator=gen) * 2 - 1).to(dtypes[name])
            b = (torch.rand(n, n, generator=gen) * 2 - 1).to(dtypes[name])
            try:
                for _ in range(args.warmup):
                    torch.matmul(a, b)
                total = 0.0
                for _ in range(args.iters):
                    start = time.perf_counter()
                    torch.matmul(a, b)
                    total += time.perf_counter() - start
            except RuntimeError as e:
                print("%8d %7d %7d %5s %10s %10s   # %s" % (n, n, n, name, "N/A", "N/A", str(e).splitlines()[0]))
                continue
            seconds = total / args.iters
            print("%8d %7d %7d %5s %10.3f %10.1f" % (n, n, n, name, seconds * 1e3, 2.0 * n * n * n / seconds / 1e9))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
