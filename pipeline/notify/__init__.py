"""Notifications: each event of a run, sent to every target of its job that wants it.

CONTRACT §10. A ``Notice`` is one event (start, success, failure, recovery, late, skipped,
retry) of one job; ``Notifier.notify`` turns it into one delivery per target whose ``when:``
names the event, and returns at once: a notification never delays a step or the scheduler,
and never changes a run's status. Deliveries are sent by the notifier's own tasks
(``Notifier.serve``, started in a nursery of its own):

* each try has the target's ``timeout`` (default 10s); a failed try is tried again after a
  backoff, 3 tries in all; every outcome (delivered, failed, suppressed by ``cooldown``,
  dropped because too many are pending) goes to ``report`` and the log;
* deliveries to one target of one job go out in order, one at a time (a ping's ``/start``
  never overtakes its ``/fail``); different targets go out side by side, at most
  ``max_concurrent`` at once, so a hanging endpoint holds up only its own queue;
* what is pending is handed to ``save`` whenever it changes and read back by ``load`` when
  ``serve`` starts, so an undelivered alert survives a restart (the daemon's store backs
  both; a JSON file does for tests and ``JsonFile``);
* a target's strings are templates, rendered when it is sent: ``${{ secrets.HOOK_URL }}`` is
  read then (the job's secrets, and the settings file's), and every secret value is masked
  as ``***`` in what is logged, reported or saved, and in the event itself.

How each kind is sent:

* ``webhook``: a JSON POST of the event (``Notice.payload``; docs/notifications.md);
* ``slack``: a Slack-compatible incoming webhook, ``{"text": ...}``;
* ``email``: through the settings' SMTP server with STARTTLS (``smtplib`` in a thread);
* ``ping``: healthchecks style: ``URL/start`` when a run starts, ``URL`` when it succeeds,
  ``URL/fail`` when it fails or is late, ``URL/log`` for a retry or a skip;
* ``command``: a local program with the event as JSON on stdin, in its own process group,
  ended (SIGTERM, then SIGKILL) when its timeout passes.

    notice     a notice (one event of one job) and what became of telling one target
    message    a notice rendered for one target, the secrets it uses read as it is sent
    send       sending one message once: HTTP (webhook, Slack, ping), SMTP, a command
    outbox     pending deliveries as they are saved (``JsonFile`` for tests and tools)
    cooldown   a target's cooldown: repeats suppressed, here and (claimed) in the store
    outcomes   what became of each delivery: counted, logged, handed to ``report``
    notifier   the ``Notifier``: queues, lanes, tries and retries, over the pieces above
"""
