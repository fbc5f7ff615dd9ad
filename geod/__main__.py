"""`python -m geod` is the same as the `geod` console script."""

from geod.cli import main

raise SystemExit(main())
