"""`python -m serpent_basicsr.test -opt X.yml [BasicSR flags]`: same as `basicsr test`."""
import sys

from serpent_basicsr.cli import main

if __name__ == '__main__':
    sys.exit(main(['test'] + sys.argv[1:]))
