#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for development and tests: every message it accepts is written
to a Maildir, one file per recipient, as a mail store would deliver it.

    smtp-sink.py --port 2525 --maildir .dev/mail [--control DIR]
                 [--tls-cert F --tls-key F] [--auth LOGIN:PASSWORD]

With --tls-cert and --tls-key the server offers STARTTLS and requires it before MAIL; with
--auth it also requires AUTH (PLAIN or LOGIN) with those credentials, as a production relay does.

The control directory lets a test make the server misbehave. Its files are read on every
command, so a test changes the behaviour while clients are connected:

    reject   lines "<address> <code>": RCPT TO:<address> is answered <code> (451: try again
             later, 550: never), so the message is not accepted for that address
    hold     lines "<address> <seconds>": a message to <address> is stored, then the end of its
             DATA is answered only after <seconds> (a client that dies meanwhile never learns
             that its message was delivered)
"""

import argparse
import asyncio
import mailbox
import os
import signal
import ssl
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def read_table(control, name):
    """The control file `name` as {address: value}; empty when there is none."""
    if control is None:
        return {}
    try:
        text = (control / name).read_text()
    except FileNotFoundError:
        return {}
    table = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            table[parts[0].lower()] = parts[1]
    return table


class MaildirHandler:
    def __init__(self, maildir, control):
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.control = control

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        code = read_table(self.control, "reject").get(address.lower())
        if code is not None:
            text = "try again later" if code.startswith("4") else "mailbox unavailable"
            return f"{code} {code[0]}.2.0 <{address}>: {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        holds = read_table(self.control, "hold")
        hold = 0.0
        for rcpt in envelope.rcpt_tos:
            message = mailbox.MaildirMessage(envelope.original_content)
            # The envelope, as a delivering server records it.
            message["Delivered-To"] = rcpt
            message["Return-Path"] = f"<{envelope.mail_from}>"
            self.maildir.add(message)
            hold = max(hold, float(holds.get(rcpt.lower(), 0)))
        if hold > 0:
            await asyncio.sleep(hold)
        return "250 2.0.0 OK: queued"


def authenticator(login, password):
    expected = LoginPassword(login.encode(), password.encode())

    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data == expected
        return AuthResult(success=ok)

    return check


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--auth", help="LOGIN:PASSWORD required before MAIL")
    args = parser.parse_args()

    args.maildir.parent.mkdir(parents=True, exist_ok=True)
    handler = MaildirHandler(args.maildir, args.control)
    options = {"hostname": "smtp-sink", "command_call_limit": None, "timeout": 60}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        options.update(tls_context=context, require_starttls=True)
    if args.auth:
        login, _, password = args.auth.partition(":")
        options.update(
            authenticator=authenticator(login, password),
            auth_required=True,
            auth_require_tls=bool(args.tls_cert),
        )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, **options), args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"smtp-sink: listening on {args.host}:{args.port}, Maildir {args.maildir}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(asyncio.run(main()))
