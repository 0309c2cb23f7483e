"""mdmflow: durable Apple MDM workflows on Temporal.

The application's parts are imported by their top-level names (``workflows``,
``activities``, ``starter``, ``store``, ``worker``, ...). An installed mdmflow keeps them
inside itself, in ``mdmflow/_app``, so that site-packages holds only ``mdmflow`` and those
generic names cannot collide with another project's; importing mdmflow puts that folder at
the front of ``sys.path``. A checkout (or an editable install of one) has no ``_app``: the
repository root, which holds the same folders, takes its place.
"""

import os
import sys

__version__ = "0.5.0"


def app_root() -> str:
    """The directory the top-level application packages are imported from."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "_app")
    return installed if os.path.isdir(installed) else os.path.dirname(here)


def _put_app_on_path() -> None:
    root = app_root()
    # Once: mdmflow may be imported again (the workflow sandbox re-imports modules).
    if root not in sys.path:
        sys.path.insert(0, root)


_put_app_on_path()
