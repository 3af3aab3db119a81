"""`python -m bert_pretrain` is the same as the `bert-pretrain` command."""

import sys

from bert_pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
