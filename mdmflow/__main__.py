from mdmflow.cli import main

raise SystemExit(main())
