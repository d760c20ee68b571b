"""`python -m serpent_basicsr.train -opt X.yml [BasicSR flags]`: same as `basicsr train`."""
import sys

from serpent_basicsr.cli import main

if __name__ == '__main__':
    sys.exit(main(['train'] + sys.argv[1:]))
