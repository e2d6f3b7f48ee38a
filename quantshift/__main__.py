from quantshift.cli import main

raise SystemExit(main())
