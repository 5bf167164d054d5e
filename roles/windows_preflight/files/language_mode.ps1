# tokentrust: read-only, Constrained Language mode safe: the language mode PowerShell gives our probes. Under
# App Control for Business (WDAC) or AppLocker, win_powershell runs a script body in ConstrainedLanguage (its
# own source: "If WDAC is applied ... run the script ... in CLM"), where Add-Type and most .NET types of our
# probes are refused. Runs in check mode too.
[CmdletBinding(SupportsShouldProcess)]
param ()
$Ansible.Changed = $false
$Ansible.Result = @{ language_mode = "$($ExecutionContext.SessionState.LanguageMode)" }
