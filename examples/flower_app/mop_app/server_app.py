"""The ServerApp: libmop.flower.MopStrategy over the connected nodes."""
from libmop import flower as lf

from mop_app.task import finish, make_strategy

app = lf.server_app(make_strategy, done=finish)
