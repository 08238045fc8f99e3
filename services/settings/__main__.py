"""`python -m services.settings`: the README's configuration table."""

from services.settings import OPTIONS
from services.settings.options import markdown_table

print(markdown_table(OPTIONS))
