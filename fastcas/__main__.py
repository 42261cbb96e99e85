import sys

from fastcas.cli import main

sys.exit(main())
