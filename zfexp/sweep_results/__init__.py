"""Reading finished sweeps: the paper's tables and the summariser that puts our numbers beside them."""
