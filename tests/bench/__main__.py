"""`python -m tests.bench [executor|proxy|loop|scale] [--scale N]`: one benchmark, or all in
turn."""

import sys

from tests.bench import bench_executor, bench_loop, bench_proxy, bench_scale

BENCHES = {
    "executor": bench_executor.main,
    "proxy": bench_proxy.main,
    "loop": bench_loop.main,
    "scale": bench_scale.main,
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in BENCHES:
        names, rest = [argv[0]], argv[1:]
    else:
        names, rest = list(BENCHES), argv
    status = 0
    for name in names:
        print(f"== {name} ==", flush=True)
        try:
            BENCHES[name](rest)
        except SystemExit as done:  # each benchmark exits with its pass/fail status
            code = done.code if isinstance(done.code, int) else 1
            status = status or code
    return status


sys.exit(main(sys.argv[1:]))
