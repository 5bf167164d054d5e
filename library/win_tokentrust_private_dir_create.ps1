#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# make one admin-only folder WITH its final ACL in the same call, so that it never exists, even for a
# moment, with the ACL it would inherit from ProgramData (where Users may create and write); or bring a folder of
# ours that exists to exactly that ACL: protected DACL (nothing inherited), full control for Administrators
# (S-1-5-32-544) and SYSTEM (S-1-5-18), read for $ReadSids, nothing else (an extra entry such as Users:Modify is
# removed), owner Administrators. A folder that exists although this run's probe found it missing ($Existed false)
# was made by someone else in between: the script stops and changes nothing.

$spec = @{
    options = @{
        path      = @{ type = 'str'; required = $true }
        read_sids = @{ type = 'list'; elements = 'str'; default = @() }
        existed   = @{ type = 'bool'; default = $false }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$Path = $module.Params.path
$ReadSids = $module.Params.read_sids
$Existed = $module.Params.existed
$ErrorActionPreference = 'Stop'
$created = $false
$fixed = $false

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

if (-not (Test-Path -LiteralPath $Path)) {
    if (-not $module.CheckMode) {   # create the folder with its ACL
        if ([System.IO.Directory].GetMethod('CreateDirectory', [type[]]@([string], $sec.GetType()))) {
            [void][System.IO.Directory]::CreateDirectory($Path, $sec)                   # Windows PowerShell 5.1
        }
        else {
            [void][System.IO.FileSystemAclExtensions]::CreateDirectory($sec, $Path)    # PowerShell 7
        }
    }
    $module.Result.changed = $true
    $created = $true
}
else {
    if (-not $Existed) {
        $module.FailJson("$Path appeared after this run's probe found it missing: someone created it in between (a standard user can create folders in ProgramData). Nothing was changed: check it, delete it, then run again")
    }
    $item = Get-Item -LiteralPath $Path -Force
    if (-not $item.PSIsContainer -or ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) {
        $module.FailJson("$Path is no longer a plain folder (a file, link or junction replaced it after the probe): nothing was changed")
    }
    # the same security descriptor, in the same canonical form Windows stores it
    $want = $sec.GetSecurityDescriptorSddlForm('Owner, Access')
    $have = (Get-Acl -LiteralPath $Path).GetSecurityDescriptorSddlForm('Owner, Access')
    if ($have -ne $want) {
        if (-not $module.CheckMode) {   # replace its ACL with the admin-only one
            Set-Acl -LiteralPath $Path -AclObject $sec
        }
        $module.Result.changed = $true
        $fixed = $true
    }
}
$module.Result.path = $Path
$module.Result.created = $created
$module.Result.fixed = $fixed
$module.ExitJson()
