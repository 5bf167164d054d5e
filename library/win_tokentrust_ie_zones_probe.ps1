#!powershell

# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# read-only probe of what decides the IE zone of our sites. Runs in check mode too.
# - Group Policy that owns the Site to Zone Assignment List (ZoneMapKey): the local GPO and the domain GPOs
#   cached in Group Policy history carry it in their Registry.pol; each refresh rewrites the whole list,
#   so values we wrote there would be deleted.
# - IE Enhanced Security Configuration (on by default on Windows Server): it ignores per-user zone keys.
# - The zone Windows maps each URL to (MapUrlToZone, through [System.Security.Policy.Zone]), for the
#   WinRM account: with the machine list on, that is the machine list's answer.

$spec = @{
    options = @{
        urls = @{ type = 'list'; elements = 'str'; default = @() }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$Urls = $module.Params.urls
$ErrorActionPreference = 'Stop'

$pols = @("$env:SystemRoot\System32\GroupPolicy\Machine\Registry.pol")
$history = "$env:ProgramData\Microsoft\Group Policy\History"
if (Test-Path -LiteralPath $history) {
    $pols += @(Get-ChildItem -LiteralPath $history -Directory | ForEach-Object { "$($_.FullName)\Machine\Registry.pol" })
}
$sources = @(foreach ($p in $pols) {
    if (Test-Path -LiteralPath $p -PathType Leaf) {
        $text = [System.Text.Encoding]::Unicode.GetString([System.IO.File]::ReadAllBytes($p))
        if ($text -match 'Internet Settings\\ZoneMapKey') { $p }
    }
})

$esc = @{ admins = $false; users = $false }
foreach ($pair in @(@{ key = '{A509B1A7-37EF-4b3f-8CFC-4F3A74704073}'; who = 'admins' },
                    @{ key = '{A509B1A8-37EF-4b3f-8CFC-4F3A74704073}'; who = 'users' })) {
    $k = [Microsoft.Win32.Registry]::LocalMachine.OpenSubKey("SOFTWARE\Microsoft\Active Setup\Installed Components\$($pair.key)")
    if ($k) {
        $esc[$pair.who] = [bool]([int]($k.GetValue('IsInstalled', 0)) -eq 1)
        $k.Close()
    }
}

$zones = @{}
foreach ($u in $Urls) {
    $zones[$u] = [int][System.Security.Policy.Zone]::CreateFromUrl($u).SecurityZone
}

$module.Result.gpo_sources = $sources
$module.Result.esc = $esc
$module.Result.zones = $zones
$module.ExitJson()
