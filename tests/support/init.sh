#!/bin/sh
# Stand-in init for the privileged tests: records what it sees in the new root on stdout,
# then runs the scenario's action ($OVL_TEST_ACTION) and syncs.
echo "INIT-ARGS:$*"
echo "---mountinfo"
cat /proc/self/mountinfo
echo "---status"
/sbin/ovlctl status --json
echo "STATUS-EXIT:$?"
echo "---action"
if [ -n "$OVL_TEST_ACTION" ]; then eval "$OVL_TEST_ACTION"; fi
# Late in boot, as the ROM's init on a device: the first boot completes.
[ -e /run/no-firstboot ] || /sbin/ovlctl firstboot >/dev/null 2>&1
sync
echo "---end"
