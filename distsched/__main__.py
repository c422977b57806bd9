from distsched.cli import main

raise SystemExit(main())
