"""Writing and editing nets: the NetSpec DSL (``dsl``), Crop offsets (``coord_map``), weight surgery, drawing
(``viz``) and the model zoo (``zoo``)."""
