# tokentrust: create one admin-only folder WITH its final ACL in the same call, so that it never exists,
# even for a moment, with the ACL it would inherit from ProgramData (where Users may create and write).
# Full control for Administrators (S-1-5-32-544) and SYSTEM (S-1-5-18), read for $ReadSids, owner
# Administrators, nothing inherited. A folder that exists is left to win_acl / win_owner.
[CmdletBinding(SupportsShouldProcess)]
param (
    [Parameter(Mandatory = $true)][string]$Path,
    [string[]]$ReadSids = @()
)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
$created = $false

if (-not (Test-Path -LiteralPath $Path)) {
    $sec = [System.Security.AccessControl.DirectorySecurity]::new()
    $sec.SetAccessRuleProtection($true, $false)
    $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    $none = [System.Security.AccessControl.PropagationFlags]::None
    foreach ($s in @('S-1-5-32-544', 'S-1-5-18')) {
        $sec.AddAccessRule([System.Security.AccessControl.FileSystemAccessRule]::new(
            [System.Security.Principal.SecurityIdentifier]::new($s), 'FullControl', $inherit, $none, 'Allow'))
    }
    foreach ($s in $ReadSids) {
        $sec.AddAccessRule([System.Security.AccessControl.FileSystemAccessRule]::new(
            [System.Security.Principal.SecurityIdentifier]::new($s), 'ReadAndExecute', $inherit, $none, 'Allow'))
    }
    $sec.SetOwner([System.Security.Principal.SecurityIdentifier]::new('S-1-5-32-544'))
    if ($PSCmdlet.ShouldProcess($Path, 'create the folder with its ACL')) {
        if ([System.IO.Directory].GetMethod('CreateDirectory', [type[]]@([string], $sec.GetType()))) {
            [void][System.IO.Directory]::CreateDirectory($Path, $sec)                   # Windows PowerShell 5.1
        }
        else {
            [void][System.IO.FileSystemAclExtensions]::CreateDirectory($sec, $Path)    # PowerShell 7
        }
    }
    $Ansible.Changed = $true
    $created = $true
}
$Ansible.Result = @{ path = $Path; created = $created }
