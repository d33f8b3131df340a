import sys

from tokenomy.cli.main import main

sys.exit(main())
