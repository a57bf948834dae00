import sys

from fer_lab.cli import main

sys.exit(main())
