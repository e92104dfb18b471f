"""The customer-service console: a small server-rendered web application (Starlette,
Jinja2 templates, htmx) served in the charging server's process, on its own address
(``CHARGING_CONSOLE_ADDRESS``), calling the same domain services as the gRPC servicers.

    staff.py     staff accounts: scrypt password hashes, roles, stored in Redis (keys.py)
    access.py    which role may do what on the console (deny by default), personal data
    sessions.py  signed session cookies, sessions and their CSRF tokens in Redis
    audit.py     every action of a staff member in the audit trail (PostgreSQL)
    desk.py      the domain services the pages call
    web.py       the Starlette application: sign-in, the guard of every request, rendering
    customers.py search and the customer page      application.py  the application form
    actions.py   the actions on a customer and a line  operations.py the operations page
    serving.py   uvicorn in the server's event loop
"""
