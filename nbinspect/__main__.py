"""``python -m nbinspect prepare``: convert the offline default model once (used by `make demo` / `make test`)."""

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["prepare"]:
        print("usage: python -m nbinspect prepare", file=sys.stderr)
        return 2
    from .loading import minilm_folder, smollm2_folder

    print(f"default model ready in {smollm2_folder()}")
    print(f"MiniLM ready in {minilm_folder()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
