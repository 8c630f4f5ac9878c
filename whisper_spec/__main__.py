import sys

from whisper_spec.cli import main

sys.exit(main())
