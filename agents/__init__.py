"""The Faust agents and the model runners they drive."""
