"""WorkOS's list APIs for one large directory, for bench/scale's snapshot reconciliation.

    python3 bench/workos_standin.py PORT USERS GROUPS PER_USER

Serves `GET /directories`, `GET /directory_users?directory=…|group=…` and
`GET /directory_groups?directory=…` as ../shared/spec/API.md documents them (the list envelope,
`limit` up to 100, `order` `desc` by default, `after` the next page in listing order), for the
directory `directory_big`: USERS users, GROUPS groups, user u a member of the groups
(u * PER_USER + k) % GROUPS for k < PER_USER, with the ids `bench.fill_directory` gives them
(bench/scale.sql). The objects are made on each request, not held, so a million users cost the
stand-in no memory. It is a benchmark's stand-in, not the tests' (tests/it/fake_workos.rs): no
errors, no rate limit, no other filter.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DIRECTORY = "directory_big"
STAMP = "2021-06-25T19:07:33.155Z"
USERS, GROUPS, PER_USER = (int(arg) for arg in sys.argv[2:5])
USER_PREFIX = f"directory_user_{DIRECTORY}_"
GROUP_PREFIX = f"directory_group_{DIRECTORY}_"


def user_id(u):
    return f"{USER_PREFIX}{u:08d}"


def group_id(g):
    return f"{GROUP_PREFIX}{g}"


def user(u):
    email = f"user{u}@example.com"
    return {
        "object": "directory_user", "id": user_id(u), "directory_id": DIRECTORY,
        "organization_id": f"org_{DIRECTORY}", "idp_id": str(u), "email": email,
        "first_name": "Ada", "last_name": "Lovelace", "state": "active",
        "emails": [{"primary": True, "type": "work", "value": email}],
        "role": {"slug": "member"}, "roles": [{"slug": "member"}],
        "custom_attributes": {"department": "Engineering"},
        "raw_attributes": {"userName": email, "title": "Engineer", "active": True},
        "groups": [], "created_at": STAMP, "updated_at": STAMP,
    }


def group(g):
    return {
        "object": "directory_group", "id": group_id(g), "idp_id": str(g), "directory_id": DIRECTORY,
        "organization_id": f"org_{DIRECTORY}", "name": f"Group {g}",
        "raw_attributes": {"description": "Engineering org"}, "created_at": STAMP, "updated_at": STAMP,
    }


def members(g):
    """The users of group g, ascending: u * PER_USER + k = g (mod GROUPS) for some k."""
    inverse = pow(PER_USER, -1, GROUPS)  # GROUPS and PER_USER have no common factor
    found = set()
    for k in range(PER_USER):
        found.update(range((g - k) * inverse % GROUPS, USERS, GROUPS))
    return sorted(found)


def page(indices, key_of, make, query):
    """A page of `indices` (ascending) in listing order after `after`."""
    limit = max(1, min(100, int(query.get("limit", ["10"])[0])))
    descending = query.get("order", ["desc"])[0] != "asc"
    order = list(reversed(indices)) if descending else list(indices)
    after = query.get("after", [None])[0]
    start = 0
    if after is not None:
        keys = [key_of(i) for i in order]
        start = keys.index(after) + 1 if after in keys else len(keys)
    chosen = order[start:start + limit]
    more = start + limit < len(order)
    return {
        "object": "list",
        "data": [make(i) for i in chosen],
        "list_metadata": {"before": None, "after": key_of(chosen[-1]) if more and chosen else None},
    }


def user_page(query):
    """Users by index, without building the list of a million ids."""
    limit = max(1, min(100, int(query.get("limit", ["10"])[0])))
    descending = query.get("order", ["desc"])[0] != "asc"
    after = query.get("after", [None])[0]
    if after is None:
        start = USERS - 1 if descending else 0
    else:
        u = int(after[len(USER_PREFIX):])
        start = u - 1 if descending else u + 1
    step = -1 if descending else 1
    chosen = [u for u in range(start, start + step * limit, step) if 0 <= u < USERS]
    last = chosen[-1] if chosen else None
    more = last is not None and 0 <= last + step < USERS
    return {
        "object": "list",
        "data": [user(u) for u in chosen],
        "list_metadata": {"before": None, "after": user_id(last) if more else None},
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: without this, each answer waits for the
    # client's delayed acknowledgement of the first (40 ms).
    disable_nagle_algorithm = True

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/directories":
            body = page([0], lambda _: DIRECTORY, lambda _: {
                "object": "directory", "id": DIRECTORY, "organization_id": f"org_{DIRECTORY}",
                "external_key": "bench", "type": "generic scim v2.0", "state": "linked",
                "name": "Bench directory", "domain": "example.com", "created_at": STAMP,
                "updated_at": STAMP}, query)
        elif url.path == "/directory_users" and query.get("directory") == [DIRECTORY]:
            body = user_page(query)
        elif url.path == "/directory_users" and "group" in query:
            g = int(query["group"][0][len(GROUP_PREFIX):])
            body = page(members(g), user_id, user, query)
        elif url.path == "/directory_groups" and query.get("directory") == [DIRECTORY]:
            body = page(list(range(GROUPS)), group_id, group, query)
        else:
            body = {"object": "list", "data": [], "list_metadata": {"before": None, "after": None}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
