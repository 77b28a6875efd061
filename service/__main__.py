import sys

from service.cli import main

if __name__ == "__main__":  # not when a decode worker process (multiprocessing forkserver) imports the main module
    sys.exit(main())
