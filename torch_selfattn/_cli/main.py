"""Command line: `python -m torch_selfattn info` and `python -m torch_selfattn bench`.
The demo is `python -m torch_selfattn.demo`."""
import argparse
import sys

import torch

from torch_selfattn import __version__


def _parser():
    parser = argparse.ArgumentParser(prog="python -m torch_selfattn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"torch-selfattn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,bench}")
    commands.add_parser("info", help="versions, CPU ISA, kernels and CUDA architectures of this build")
    bench = commands.add_parser("bench", help="a quick table of our speed against PyTorch's SDPA",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024], help="sequence lengths (L = S)")
    bench.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                       choices=["float16", "bfloat16", "float32", "float64"], help="element types")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median shown)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    bench.add_argument("--threads", type=int, default=torch.get_num_threads(),
                       help="CPU threads (PyTorch's count); 1 gives steadier numbers on a busy machine")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from torch_selfattn._cli.info import report

        print("\n".join(report()))
        return 0
    from torch_selfattn._cli import bench
    from torch_selfattn._cli.devices import pick_device

    if min(args.seq_len) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--seq-len, --repeats and --threads must be positive")
    try:
        device = pick_device(args.device)
    except ValueError as error:
        sys.exit(f"python -m torch_selfattn bench: error: {error}")
    torch.set_num_threads(args.threads)
    bench.run(args.seq_len, [getattr(torch, d) for d in args.dtype], args.repeats, str(device))
    return 0
