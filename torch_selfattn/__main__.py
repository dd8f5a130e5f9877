"""Command line: `python -m torch_selfattn info` and `python -m torch_selfattn bench`.
The demo is `python -m torch_selfattn.demo`."""
import argparse
import sys

import torch


def _parser():
    parser = argparse.ArgumentParser(prog="python -m torch_selfattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,bench}")
    commands.add_parser("info", help="versions, CPU ISA, kernels and CUDA architectures of this build")
    bench = commands.add_parser("bench", help="a quick table of our speed against PyTorch's SDPA")
    bench.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024], help="sequence lengths (L = S)")
    bench.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                       choices=["float16", "bfloat16", "float32", "float64"])
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median shown)")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--threads", type=int, default=torch.get_num_threads(),
                       help="CPU threads (default: PyTorch's); 1 gives steadier numbers on a busy machine")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "info":
        from torch_selfattn.info import report

        print("\n".join(report()))
        return 0
    from torch_selfattn import bench

    if min(args.seq_len) < 1 or args.repeats < 1 or args.threads < 1:
        _parser().error("--seq-len, --repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    bench.run(args.seq_len, [getattr(torch, d) for d in args.dtype], args.repeats, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
