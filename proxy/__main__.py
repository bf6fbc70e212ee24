"""``python -m proxy``: the same command line as the ``venice-e2ee-proxy`` script."""

from proxy.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
