"""`python -m tandem`: the `tandem` command line."""

from tandem.cli import main

raise SystemExit(main())
