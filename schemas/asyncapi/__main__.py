"""`python -m schemas.asyncapi > docs/asyncapi.yaml`."""

import sys

from schemas.asyncapi import render

sys.stdout.write(render())
