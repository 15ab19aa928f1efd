"""The ``sightline`` command. Each subcommand imports what it runs lazily, so the API's
commands never load torch."""
