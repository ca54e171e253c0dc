"""`python -m modelserver.launcher.backends.sim_rank --nnodes N --node-rank R
--dist-init-addr HOST:PORT --tp-size T`: a non-zero rank of a simulated replica that spans
nodes. It takes SGLang's multi-node flags, refuses what SGLang would refuse (a rank outside
0..N-1, a --tp-size not divisible by --nnodes, an address that is not HOST:PORT), says what
it is, and waits until it is stopped: a real process on its node that the supervising actor
starts, watches and stops like an engine's rank, with no GPU work to do.
"""

from __future__ import annotations

import argparse
import signal
import sys


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sim_rank")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, required=True)
    parser.add_argument("--dist-init-addr", required=True)
    parser.add_argument("--tp-size", type=int, required=True)
    args = parser.parse_args(argv)
    host, _, port = args.dist_init_addr.rpartition(":")
    if args.nnodes < 2 or not 1 <= args.node_rank < args.nnodes:
        parser.error(f"--node-rank {args.node_rank}: a waiting rank is 1..{args.nnodes - 1}")
    if args.tp_size % args.nnodes:
        parser.error(f"--tp-size {args.tp_size} is not divisible by --nnodes {args.nnodes}")
    if not host or not port.isdigit():
        parser.error(f"--dist-init-addr {args.dist_init_addr!r}: must be HOST:PORT")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    print(f"sim rank {args.node_rank} of {args.nnodes} (tp {args.tp_size}) joined"
          f" {args.dist_init_addr}; waiting", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
