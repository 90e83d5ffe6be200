"""The one exception type medxp raises for bad input: a message a user can act on."""


class MedxpError(Exception):
    """Bad input or an impossible request; the message names the file or key and what was expected."""
