import sys

from demo.build import main

sys.exit(main())
