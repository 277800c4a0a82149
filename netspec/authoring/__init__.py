"""Writing and editing nets: the NetSpec DSL (``dsl``), Crop offsets (``coord_map``), weight surgery
and the model zoo (``zoo``)."""
