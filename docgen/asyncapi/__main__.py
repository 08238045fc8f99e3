"""`python -m docgen.asyncapi > docs/asyncapi.yaml`."""

import sys

from docgen.asyncapi import render

sys.stdout.write(render())
