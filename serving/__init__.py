"""gRPC scorer (a later issue): loads a registered bundle and scores raw rows."""
