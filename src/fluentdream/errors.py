"""The one exception type for problems with what the user gave: a setting, a target, a file.

    try:
        fd.parse_target("L99.N5", lm)
    except fd.UserError as e:
        print(e)        # "layer 99 is out of range; allowed 0..3"

Validation code raises `UserError` with a message that says what was wrong and what is allowed
(and names the file, for a file). The command line shows a UserError as one line with exit status
2; any other exception is a bug and keeps its traceback (fluentdream.cli.commands.main).
UserError subclasses ValueError, so code that caught ValueError from validation still catches it.

Shared by every part of the package; imports nothing of fluentdream.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: a setting, target, model, dataset, directory or file the user chose."""


# Where the command line tells users to report an internal error.
ISSUE_TRACKER = "the fluentdream issue tracker (include the command and the traceback above)"
