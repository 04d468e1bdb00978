"""Reading ClickHouse: the read path users and the review app share, and the embedded sink's query endpoint."""
