"""The ClientApp: a libmop.flower.MopClient per node, trained on the node's data."""
from libmop import flower as lf

from mop_app.task import make_client

app = lf.client_app(make_client)
