"""matrep's built-in encoders, registered through the ``matrep.encoders`` entry-point group.

Core code never imports these modules by name: it goes through :mod:`matrep.registry`, the
same way it finds third-party plugins.
"""
