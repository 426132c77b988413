import sys

from tapestry.gpucheck.runner import main

sys.exit(main())
