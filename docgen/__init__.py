"""The protocol documents, generated from the schemas (schemas/) and the settings table
(services/settings): `python -m docgen.asyncapi > docs/asyncapi.yaml` and
`python -m docgen.openapi > docs/openapi.yaml`. A development tool, not installed with the gateway:
schemas/ describes the frames and imports nothing of the project; this package reads both."""
