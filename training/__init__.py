"""Training side of mdflow_ros: data sources, losses and the MDFlow trainer (imports mdflow_ros, never the reverse)."""
