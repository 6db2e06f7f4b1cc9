#!/usr/bin/env python3
import sys
from coem.cli.export import main
from coem.cli._common import run_cli
sys.exit(run_cli(main))
