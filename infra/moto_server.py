"""moto's server, with DynamoDB's item writes made atomic.

DynamoDB applies a conditional write (PutItem, UpdateItem, DeleteItem,
TransactWriteItems) atomically: two concurrent `ADD #n :one IF #n < :limit` updates can
never both pass. moto's threaded server checks the condition and writes without a lock,
so under concurrent requests both can pass. The tests rely on DynamoDB's guarantee (the
per-user slot counter), so this launcher serialises moto's item writes behind one lock
and then runs moto's own `main` with the same arguments as `moto_server`.
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _LOCK:
            return method(*args, **kwargs)

    return locked


for _name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(DynamoDBBackend, _name, _atomic(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    sys.exit(main())
