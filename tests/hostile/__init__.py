# The attackers' uids: far from the 1000s that the folder lab and the fleet's users get. Containers share this
# kernel, so a `pkill -u` of an attacker whose uid a fleet user also has would kill that user's processes in
# every workstation (it broke a fleet bench once).
HOSTILE_UIDS = ("-K", "UID_MIN=61000", "-K", "UID_MAX=61999")
